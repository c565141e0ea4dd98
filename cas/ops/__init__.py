"""Operations that combine the layers below: import/export dispatch, checkout, mount,
repair, garbage collection and usage reports."""

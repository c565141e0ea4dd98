"""composefs: the tree model (``tree``), dumpfiles (``dumpfile``), images byte-identical
to mkcomposefs's (``erofs``, native writer in ``native``), and an artifact's tree from its
metadata image (``from_image``)."""

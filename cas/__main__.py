import sys

from cas.cli import main

sys.exit(main())

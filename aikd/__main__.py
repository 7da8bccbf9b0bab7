"""`python -m aikd <command>`: the same as the `aikd` command."""

import sys

from aikd.cli import main

sys.exit(main())

"""`python -m engine` is the `streamfsm` command."""

import sys

from engine.cli import main

sys.exit(main())

"""``python -m hf_rmod`` runs the ``hf-rmod`` command line."""

import sys

from .cli import main

sys.exit(main())

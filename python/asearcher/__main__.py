"""``python -m asearcher ...`` (what ``torchrun -m asearcher train CONFIG`` runs on every rank)."""

import sys

from .cli import main

sys.exit(main())

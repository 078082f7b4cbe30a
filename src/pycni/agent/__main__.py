"""`python -m pycni.agent ...` (the same as `pycni agent ...`)."""

import sys

from .main import main

sys.exit(main())

"""``python -m copre_hub.cli`` (what ``accelerate launch -m copre_hub.cli`` and torchrun run): the console script."""

import sys

from copre_hub.cli import main

sys.exit(main())

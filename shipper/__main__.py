"""``python -m shipper`` is the ``shipper`` command."""

import sys

from shipper.cli import main

sys.exit(main())

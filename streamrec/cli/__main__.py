"""``python -m streamrec.cli``: the ``streamrec`` command."""

import sys

from streamrec.cli.main import main

sys.exit(main())

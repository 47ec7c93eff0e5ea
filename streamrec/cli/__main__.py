"""``python -m streamrec.cli``: the ``streamrec`` command."""

import sys

from streamrec.cli.commands import main

sys.exit(main())

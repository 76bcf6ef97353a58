import sys

from ragbot.cli.main import main

sys.exit(main())

"""Allow `python -m cnnserve`."""

from cnnserve.cli import main

raise SystemExit(main())

"""Entry point of ``python -m bench`` (``make bench``)."""

from bench.harness import main

raise SystemExit(main())

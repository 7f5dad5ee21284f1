"""``python -m ptychoflow.screens [FOLDER]``: rewrite the screen files (default ``op``)."""

from ptychoflow.screens.files import main

raise SystemExit(main())

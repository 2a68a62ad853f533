from kpeek.cli import main

raise SystemExit(main())

from ganpipe.cli import main

raise SystemExit(main())

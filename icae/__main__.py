from icae.cli import main

raise SystemExit(main())

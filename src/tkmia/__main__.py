from tkmia.cli import main

raise SystemExit(main())

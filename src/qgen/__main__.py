from qgen.cli import main

raise SystemExit(main())

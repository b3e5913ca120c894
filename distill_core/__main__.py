from distill_core.cli import main

raise SystemExit(main())

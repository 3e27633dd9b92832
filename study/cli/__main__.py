from study.cli.main import main

raise SystemExit(main())

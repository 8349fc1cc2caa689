from adamx.demo import main

raise SystemExit(main())

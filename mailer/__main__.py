from mailer.cli import main

raise SystemExit(main())

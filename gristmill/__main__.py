from gristmill.app.cli import main

main()

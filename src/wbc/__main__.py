from wbc.cli import main

main()

from robustkd.cli import main

main()

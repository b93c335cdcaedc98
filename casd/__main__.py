from casd.cli import main

main()

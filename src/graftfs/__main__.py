from graftfs.cli.main import main

main()

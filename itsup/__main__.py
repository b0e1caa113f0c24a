from itsup.cli.main import run

run()

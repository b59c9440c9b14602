from diffsleuth.cli.main import app

app(prog_name="diffsleuth")

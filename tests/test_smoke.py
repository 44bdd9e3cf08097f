from graphscale.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "COMMAND" in out

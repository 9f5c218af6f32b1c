from bayeshlm.cli import main


def test_datasets_command_lists_names(capsys):
    assert main(["datasets"]) == 0
    assert "teacher_expectancy" in capsys.readouterr().out


def test_describe_reports_bad_columns_without_a_traceback(capsys):
    assert main(["describe", "sleepstudy", "Reaction ~ Days + (Days | Subjct)"]) == 2
    assert "Did you mean 'Subject'" in capsys.readouterr().err

"""The commands error messages tell a user to run, written so that pasting them works.

Every word is shell-quoted: a person named ``May; rm -rf ~`` or a folder with spaces
stays one word when the line is pasted into a shell.
"""
import shlex


def shell_command(*words) -> str:
    """``words`` as one pasteable command line (each quoted only where the shell needs it)."""
    return shlex.join(str(word) for word in words)


def train_command(name, *options) -> str:
    """python train_328.py --name NAME [options]: trains the U-Net of person ``name``."""
    return shell_command("python", "train_328.py", "--name", name, *options)


def syncnet_command(*options) -> str:
    """python train_syncnet.py [options]: trains the person's SyncNet (needed by the sync loss)."""
    return shell_command("python", "train_syncnet.py", *options)


def continue_training(script: str):
    """What to say after a training run of ``script`` is interrupted: the command that continues it."""
    def advice(argv) -> str:
        words = [word for word in argv if word != "--overwrite"]     # continuing must not start over
        if "--resume" not in words:
            words.append("--resume")
        return f"finished epochs are kept; continue with: {shell_command('python', script, *words)}"
    return advice


def render_again(argv) -> str:
    """What to say after an interrupted render: nothing half-made was left."""
    return "the unfinished video was removed; run the same command again to render it"

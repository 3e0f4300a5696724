"""The project's one exception for bad input, and how a script ends.

Raised deep down with a message a user can act on (it names the file and says
what to do); scripts catch it at the top and print it as a single line, so bad
input never ends in a traceback from inside numpy or cv2. Ctrl-C and SIGTERM
end a script the same way: the work in progress cleans up after itself (partial
files are removed), finished work is kept, and one line says how to go on.
"""
import functools
import signal
import sys
import threading

INTERRUPTED_EXIT_CODE = 130      # 128 + SIGINT
TERMINATED_EXIT_CODE = 143       # 128 + SIGTERM
DEFAULT_HOW_TO_CONTINUE = "finished stages are kept; re-run the same command to continue"


class UserError(Exception):
    """Bad input or a missing prerequisite; the message is the whole story."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` and cleanup for an interrupt runs for it too."""


def _raise_terminated(signum, frame):
    raise Terminated()


def exit_on_user_error(main_function=None, *, how_to_continue=None):
    """Decorator for a script's ``main(argv=None)``: a UserError is one line and exit 2; Ctrl-C or
    SIGTERM is one line and exit 130 / 143.

    ``how_to_continue(argv)`` says what the user runs next after an interruption (e.g. the same
    command with --resume); by default, the same command again.
    """
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            in_main_thread = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
            try:
                return function(*args, **kwargs)
            except UserError as error:
                print(f"error: {error}", file=sys.stderr)
                raise SystemExit(2) from None
            except KeyboardInterrupt as stop:
                argv = args[0] if args else kwargs.get("argv")
                advice = how_to_continue(sys.argv[1:] if argv is None else list(argv)) if how_to_continue \
                    else DEFAULT_HOW_TO_CONTINUE
                terminated = isinstance(stop, Terminated)
                print(f"{'stopped (SIGTERM)' if terminated else 'interrupted'}: {advice}", file=sys.stderr)
                raise SystemExit(TERMINATED_EXIT_CODE if terminated else INTERRUPTED_EXIT_CODE) from None
            finally:
                if in_main_thread:
                    signal.signal(signal.SIGTERM, previous)
        return wrapper

    return decorate(main_function) if main_function is not None else decorate

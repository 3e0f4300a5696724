"""The project's one exception for bad input.

Raised deep down with a message a user can act on (it names the file and says
what to do); scripts catch it at the top and print it as a single line, so bad
input never ends in a traceback from inside numpy or cv2.
"""
import sys


class UserError(Exception):
    """Bad input or a missing prerequisite; the message is the whole story."""


def exit_on_user_error(main_function):
    """Decorator for a script's ``main``: print a UserError as one line and exit 2."""
    import functools

    @functools.wraps(main_function)
    def wrapper(*args, **kwargs):
        try:
            return main_function(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: finished stages are kept; re-run the same command to continue",
                  file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper

"""python -m unixloop SCRIPT [ARGS...]
python -m unixloop -m MODULE [ARGS...]

Runs an asyncio program on unixloop without changing it: installs unixloop's
event loop policy (unixloop.install()), then runs the script or the module
as `python SCRIPT ARGS...` or `python -m MODULE ARGS...` would: as
__main__, with those sys.argv, and the script's directory first on sys.path.
Every loop the program gets from asyncio (asyncio.run(), new_event_loop(),
get_event_loop()) is then a unixloop loop, unless the program installs
another policy itself (uvloop.install(), say).

    python -m unixloop server.py --port 8080
    python -m unixloop -m uvicorn --loop asyncio app:app
"""
import importlib.util
import os
import runpy
import sys

import unixloop

USAGE = __doc__.split('\n\n')[0]


def _module_exists(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def main(argv):
    if not argv or argv == ['-m']:
        print('usage:\n' + USAGE, file=sys.stderr)
        return 2
    if argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0
    if argv[0] == '-m':
        module, args = argv[1], argv[2:]
        if not _module_exists(module):
            print('unixloop: No module named {}'.format(module),
                  file=sys.stderr)
            return 1
        sys.argv = [module] + args  # argv[0] becomes the module's path
        unixloop.install()
        runpy.run_module(module, run_name='__main__', alter_sys=True)
        return 0
    if argv[0].startswith('-'):
        print('unixloop: unknown option {!r}\nusage:\n{}'.format(
            argv[0], USAGE), file=sys.stderr)
        return 2
    script, args = argv[0], argv[1:]
    if not os.path.exists(script):
        print("unixloop: can't open file {!r}: [Errno 2] No such file or "
              "directory".format(script), file=sys.stderr)
        return 2
    sys.argv = [script] + args
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    unixloop.install()
    runpy.run_path(script, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

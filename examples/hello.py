"""hello.py -- run an asyncio program on unixloop."""
import asyncio

import unixloop


async def main():
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    print(f"hello from {type(loop).__module__}.{type(loop).__qualname__}")


if __name__ == "__main__":
    unixloop.run(main())

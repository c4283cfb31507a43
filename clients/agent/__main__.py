import asyncio

from clients.agent.agent import main

asyncio.run(main())

"""The relay: a pure core that decides, an asyncio server that moves bytes."""

"""The client: a pure core that decides, an asyncio connection that moves bytes."""

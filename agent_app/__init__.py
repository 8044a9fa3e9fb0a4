"""An example LangGraph agent served over HTTP by aiohttp with the LangGraph Server API subset."""

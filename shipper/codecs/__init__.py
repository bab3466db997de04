"""Sans-IO codecs: bytes in, frames and records out. Nothing here touches sockets or trio."""

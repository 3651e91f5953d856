"""graftfs's long-running front ends (``graftfs serve ...``): each imports its wire library only when it runs."""

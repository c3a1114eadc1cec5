"""Commands built on the library, not part of it: `bench` (speed, peers side by side) and `memory`
(the 3 GB question). Nothing in the library imports them."""

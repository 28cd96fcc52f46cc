"""fairgate's Lua scripts, one file per atomic operation (`lua/*.lua`), shared helpers in
`lua/lib/`. Installed as the package `gate.lua` so that the scripts ship inside the wheel;
`gate.room.scripts` reads them with importlib.resources."""

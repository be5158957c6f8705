//! Lake layout for file sinks: Hive partitions, atomic commits, rolling files.

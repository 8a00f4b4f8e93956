//! shelfboot master: package and node databases, composite images, plan resolution, the backplane service and operator CLI.

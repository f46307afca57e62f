//! D-Bus service `org.mpslab.Lab1`.

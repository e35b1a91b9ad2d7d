"""Writers: Secondary Capture, VL Photographic, Encapsulated PDF, derived images, corrections."""

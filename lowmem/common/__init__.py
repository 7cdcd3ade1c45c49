"""Small helpers every layer may use, knowing nothing of the model: checked reading of JSON files
and images, output paths written atomically, checks of the numbers a user passes, PSNR/SSIM, what
this machine has, and giving freed host memory back. Imports nothing of lowmem but `lowmem.errors`."""

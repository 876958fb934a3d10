"""Data the package makes itself: synthetic videos and DAVIS-format sets (:mod:`.scenes`), DAVIS-format
sets composited from real videos (:mod:`.composite`, variants in :mod:`.variants`), and the demo that
runs the whole pipeline on them (:mod:`.demo`)."""

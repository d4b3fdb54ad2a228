"""One widget per module (toad / harlequin style)."""

"""Speed-ups beside the plain training loop, never inside it: ``stacked`` trains a configuration's seeds as one
stacked model."""

from libs.common.bus import run_service
from services.placement.app import create_service
from services.placement.settings import PlacementSettings

settings = PlacementSettings()
run_service(lambda: create_service(settings), settings)
